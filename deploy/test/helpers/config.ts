import { defaults, type StackConfig } from '../../stack.ts'

export const DOMAIN = 'chroma-lease.example.com'

export function testConfig(prefix: string, over: Partial<StackConfig> = {}): StackConfig {
  return {
    ...defaults,
    prefix,
    domainName: DOMAIN,
    hostedZoneId: 'Z0123456789ABCDEFGHIJ',
    controlPlaneImage: '123456789012.dkr.ecr.eu-west-1.amazonaws.com/chroma-lease/control-plane:1.0.0',
    sessionImage: '123456789012.dkr.ecr.eu-west-1.amazonaws.com/chroma-lease/session:1.0.0',
    databasePassword: 'a-test-password',
    clientApiKey: 'clk_test',
    operatorApiKey: 'opk_test',
    session: { ...defaults.session },
    alarms: { ...defaults.alarms },
    ...over,
  }
}
